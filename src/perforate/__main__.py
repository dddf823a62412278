"""``python -m perforate``: the same as the ``perforate`` command."""


from .cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
