"""The commands: `difflab train|sample|evaluate|compare|demo|setup|export` once installed, or the scripts
beside README.md (train.py, sample.py, ...) from a plain checkout. Each module has main(argv)."""
