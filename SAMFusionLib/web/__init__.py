"""Web: the paper's front end in a browser, ``samfusion serve``. A trame app on Kitware's
trame-slicer, which serves Slicer's own slice views of the same MRML scene that the engine fills:
pick a CT and an X-ray (the default case, uploads, or files under ``--data``), prompt, run the same
``scene.run`` Logic as the Slicer module and ``samfusion run``, look, download the scene folder.
``uploads`` holds what it accepts from a browser. It may import ``scene``, ``cases`` and everything
below them; only the command line imports it.
"""
