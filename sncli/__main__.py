from sncli.cli import main

main()
