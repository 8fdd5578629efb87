"""MISE tools: corpora, speaker-independent folds, the feature cache, metrics, generation quality, plots,
file classification and the Hub publishing commands (`mise/hub/`).

The Hub model code lives in `modeling_mise` (what `save_pretrained` copies next to the weights); this
package is what training, evaluation and publishing use around it, and is never shipped with a model.
"""
