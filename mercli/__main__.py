from mercli.cli import main

main()
