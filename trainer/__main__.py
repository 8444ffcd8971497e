"""`python -m trainer train|evaluate ...`: the trainer's commands (trainer.cli)."""

from trainer.cli import main

if __name__ == "__main__":
    main()
