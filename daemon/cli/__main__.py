"""`python -m daemon.cli`: the `genretagger` command."""

from daemon.cli import main

if __name__ == "__main__":
    main()
