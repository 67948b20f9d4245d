"""The shipped experiment configs, one file per experiment (each docstring gives its command).

pyproject.toml installs this folder as the package `cqd_jax.configs`, so that `--config=configs/<name>.py`
finds them from any directory after a plain `pip install` (cqd_jax.main.resolve_config).
"""
