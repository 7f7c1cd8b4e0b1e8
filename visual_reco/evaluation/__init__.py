"""Offline retrieval evaluation of the configured embedder on a labelled CSV of images
(``manage.py visual_reco_evaluate``).

The CSV has the columns ``path,label,role`` and optionally more label columns named
``label_*`` (``label_coarse``, ``label_colour``, ...). ``path`` is relative to the CSV's
folder. ``role`` is ``query`` or ``gallery``; an empty role makes the image both a query and
a gallery item, so a CSV whose roles are all empty is a leave-one-out evaluation.

Every image goes through the same decoding and preprocessing as production uploads
(``get_embedder().decode``, then ``.embed``; queries as the photo search embeds them), in
chunks so that decoded images never pile up in memory. Each query ranks the gallery by
cosine similarity; the query itself (the same image file) is never part of its own ranking.

Metrics, per label column:

- ``recall@K``: fraction of queries with at least one gallery item of their label in the
  top K.
- ``precision@K``: mean fraction of the top K with the query's label (K is capped at the
  number of gallery items the query can be compared with).
- ``mAP``: mean over queries of the average precision over the full ranking.
- ``knn_accuracy`` / ``knn_macro_f1``: the category vote of the photo search
  (`visual_reco.categories.vote`, softmax-weighted with ``CATEGORY_TEMPERATURE``) over the
  top ``CATEGORY_NEIGHBOURS`` gallery items predicts each query's label.

Queries that have no gallery item of their label cannot be retrieved at all: they are left
out of recall, precision and mAP (and counted as ``queries_without_relevant``), but they
take part in the kNN vote, where they count as errors. Queries without a value in a
``label_*`` column are left out of that column's metrics (``queries_unlabelled``); gallery
items without a value are never relevant and do not vote.

Modules, each importing only the ones above it: `dataset` (the CSV, query sampling),
`metrics` (pure numpy), `overrides` (``--set`` and the settings it changes), `embedding`
(decoding and embedding the images), `evaluate` (one evaluation's numbers), `report`
(the HTML report and the text summary), `run` (a whole run and its files).
"""
