"""The commands: `difflab train|sample|evaluate|compare|demo|setup|export` once installed, or the scripts
beside README.md (train.py, sample.py, ...) from a plain checkout. Each command's module has main(argv);
common.py is what they share, dryrun.py is train's --dry-run, download.py is setup's fetching."""
