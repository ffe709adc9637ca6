"""Local ``evaluate`` metric modules; load one offline with ``evaluate.load(path_to_its_folder)``."""
