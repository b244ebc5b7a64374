"""Out-of-distribution detection: post-hoc detector scores and their metrics."""
