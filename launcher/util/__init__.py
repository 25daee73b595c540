"""Small helpers with no knowledge of jobs: atomic files, process marks."""
