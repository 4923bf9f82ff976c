"""From bytes and words to vectors: image decoding and sources, image and text models, ConSE, fusion."""
