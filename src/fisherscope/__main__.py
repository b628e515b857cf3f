"""``python -m fisherscope`` runs the same command line as the ``fisherscope`` script."""

from .cli import main

if __name__ == "__main__":
    main()
