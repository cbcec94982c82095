"""T5X gin files (run layer); gin includes them by package path, hence this file."""
