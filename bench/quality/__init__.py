"""The retrieval-quality benchmark, `python -m bench.quality [--quick]` (`__main__` runs it and
says what each measurement does), in one module per measurement: `neardup` (with the photo
edits of `edits` and the image features of `features`), `crossmodal` (word queries and the
captions of `captions`), `paraphrase` and `hnsw`.
"""

TEXT_MODEL = "glove-6b-50d"  # the text model of every measurement
SEED = 20240611              # every random draw of the benchmark derives from it
