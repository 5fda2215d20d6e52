"""``--method forward``: Levenberg–Marquardt on the whole model (:mod:`.lm`), with optional
total-variation smoothing of image inputs (:mod:`.tv`); :mod:`.solver` is the registered solver.
"""
