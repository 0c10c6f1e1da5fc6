"""Problems of the book, each a factory returning a :class:`physgrad.Problem`.

``toy`` (chapters 2–6), ``heat``/``poisson``/``burgers`` (chapter 7), ``oscillators`` (chapter 8).
Submodules are imported on demand: ``from physgrad.problems import toy``.
"""
