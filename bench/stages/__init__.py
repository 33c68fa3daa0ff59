"""The bench's stages, one module each: `measure(work, sizes) -> {key: figures}` and
`rows(results) -> [table rows]` (none when its figures are absent). bench/run.py runs them."""
