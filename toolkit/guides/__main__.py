"""``python -m guides`` is the ``guides`` command."""

from .cli.main import main

if __name__ == "__main__":
    main()
