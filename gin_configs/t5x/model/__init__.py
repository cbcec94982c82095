"""T5X gin files (model layer); gin includes them by package path, hence this file."""
