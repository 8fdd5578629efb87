"""The ``uar`` evaluate module; makes the folder a package so that setuptools ships ``uar.py``."""
