"""Loss terms (a registry) and the weighted objective built from them.

Importing the package registers every term: the task, logit and feature-regression terms
(`terms`), the relational and distributional ones (`relational`), CRD (`crd`) and attention
transfer (`attention`). `catalog` describes them all as text.
"""

from mmdistill.losses import attention, crd, relational, terms  # noqa: F401  (registers the terms)
