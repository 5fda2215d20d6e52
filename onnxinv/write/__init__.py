"""Writing: the result folder (atomically), its images, and the sweep figure.

The last stage of the data path; nothing here solves or checks anything.
"""
