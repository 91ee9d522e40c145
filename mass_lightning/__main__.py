"""``python -m mass_lightning fit --config ...`` is ``mass-lightning fit --config ...``."""

from mass_lightning.console import main

if __name__ == "__main__":
    main()
