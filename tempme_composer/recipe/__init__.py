"""The builders `tempme_composer.train.train` assembles a run from: model, optimizer, data, the registered
callbacks and algorithms, the run's checks and its terminal output. Import the submodules directly."""
