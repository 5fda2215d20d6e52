"""Writing: the result folder, its images, the sweep figure, and the atomic writes they share.

The last stage of the data path; nothing here solves or checks anything.

* :mod:`.atomic` – a file or folder written to a temporary sibling and renamed into place;
* :mod:`.folder` – a result folder (inputs.npy, outputs.npy, report.json, grid.png);
* :mod:`.images` – which input shapes are images, their pixels, a result's grid;
* :mod:`.figure` – a sweep's figure, one cell per (model, class).
"""
