"""The jobs: the runner that takes a claimed job through its pipeline of steps, the context a step is given,
the SQLite state store, the status document, and the crash points the tests use."""
