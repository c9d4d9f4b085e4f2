"""The face-generation project's tools, one job per module.

helpers.py, at the top of the project, is the one page the notebook reads;
these modules are what it imports from. Lower modules never import higher
ones:

    settings    environment switches, the course recipe, config checks
    files       atomic writes and safe checkpoint loading
    fetch       the data: download (pooch), zip extraction, named sources
    faces       listing, held-out split, decoding and the decoded-image cache
    runtime     seed, device, number format
    sampling    latent vectors, generating, batch-norm re-estimation
    plots       figures, image grids, the GIF
    explorer    walking between two faces in the latent space
    run         the training run: checkpoints, resume, schedules, stops
    metrics/    weight-free quality measures (SWD, memorisation)
    score       scoring a generator against held-out faces
    report      the run's figures as JSON, and the README's table from them
    html        the notebook as an HTML page that reads offline
"""
