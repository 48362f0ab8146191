"""The commands of ``sncli`` and where each lives: a command's module is imported only when that
command runs (or shows its own ``--help``), so ``sncli --help`` loads no engine (``app.LazyGroup``).
``HELP``, ``VERSION_HELP`` and ``COMMANDS`` are also all that ``fast_help`` needs to draw the
top-level help without importing typer.

``COMMANDS`` names every command, in the order ``sncli --help`` lists them, with its module and
the first paragraph of its docstring (what the top-level help shows; tests/cli/test_startup.py
checks it against the command itself).
"""

from __future__ import annotations

#: The group's help (``sncli --help``): first paragraph, then the rest, which typer shows dim.
HELP = (
    "Spectral analysis of saved neural-network checkpoints: the largest singular value σ of "
    "every layer, the product Lipschitz bound, and spectral normalization of the weights.\n\n"
    "Reads safetensors (single, sharded with an index json, or a folder), PyTorch state "
    "dicts (.pt/.pth/.bin/.ckpt, always with weights_only=True), ONNX graphs, GGUF, NumPy "
    ".npy/.npz, TorchScript and Keras weights, and Hugging Face model ids from the local "
    "cache. Commands: inspect, spectrum, lipschitz, diff, track, normalize, report, recover."
)
#: The help of the top-level ``--version`` option.
VERSION_HELP = "Print the version."

#: name → (module, first paragraph of the command's docstring)
COMMANDS: dict[str, tuple[str, str]] = {
    "diff": (
        "sncli.cli.diff",
        "Compare two checkpoints of one model: σ of both sides and of their difference per layer.",
    ),
    "inspect": (
        "sncli.cli.inspect",
        "Report the largest singular value σ of every layer's weight matrix.",
    ),
    "lipschitz": (
        "sncli.cli.lipschitz",
        "The product Lipschitz upper bound ∏σ over the layers, and when it holds.",
    ),
    "normalize": (
        "sncli.cli.normalize",
        "Rewrite a checkpoint with spectrally normalized weights: W ← target·W/σ(W).",
    ),
    "recover": (
        "sncli.cli.recover",
        "Finish a write sncli was interrupted in (killed, power lost) using its journal.",
    ),
    "report": (
        "sncli.cli.report",
        "Write an offline HTML report: summary, σ per layer, Lipschitz factors, figures, tables.",
    ),
    "spectrum": (
        "sncli.cli.spectrum",
        "Report every layer's singular-value spectrum: ranks, norms, WeightWatcher's α and more.",
    ),
    "track": (
        "sncli.cli.track",
        "Follow every layer's σ_max (and spectrum metrics) over a training run's checkpoints.",
    ),
}
