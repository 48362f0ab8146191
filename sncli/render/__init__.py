"""Turn reports into tables (Rich), JSON and CSV. With ``sncli.cli``, the only code importing rich.

``common`` holds what the renderers share (output formats, consoles, number formatting, JSON,
the progress bar); ``inspect``, ``lipschitz`` and ``normalize`` each render one command's report.
"""
