"""Real benchmark vectors and how synthetic ones compare with them (issue 14, step 1).

- `fashion`: the 70,000 Fashion-MNIST images of `make bench-data`, as uploads the service decodes;
- `cache`: real items (Fashion-MNIST and the benchmark photos) encoded once with the default
  models into `bench/data/vectors/<model setting>/`;
- `measure`: the figures compared: recall@10 against ef of one hnswlib graph, and the gap
  between the 10th and 11th exact neighbour's score;
- `__main__`: `python -m bench.vectors`, real against synthetic vectors of the same count.
"""
