"""The life of artifacts after they are written: retention (what to keep, what to delete),
keep markers, and the debris of crashed runs.

    markers.py    keep markers in the store (survive the loss of Dagster)
    scan.py       one listing of the store: artifact folders and leftovers of crashed runs
    retention.py  the plan (grandfather-father-son, newest verified) and applying it
"""
