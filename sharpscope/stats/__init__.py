"""Statistics between sharpness measures and generalization, all as tidy DataFrames.

What is computed (one output row per (x, y, testset, method)):

* **Rank and linear correlation** between a measure (rows with ``measure == x`` at one ``rho``/``loss``) or a
  column, and a generalization column ``y`` (``eer`` on each test set, or ``eer_gap`` = EER minus the
  in-domain EER of the same checkpoint): Spearman, Pearson, Pearson on log values, Kendall τ-b.
* **p-values** (column ``p_method`` says which): Kendall uses scipy's exact null distribution
  (``kendalltau(method="exact")``) when neither variable has ties and n <= 60, otherwise a seeded
  permutation test; Spearman uses the exact permutation distribution (all n! pairings) for n <= 8 and a
  seeded permutation test above; Pearson uses ``scipy.stats.pearsonr``'s closed form (exact under
  bivariate normality).  ``pvalue="asymptotic"`` gives scipy's analytic p for every method and
  ``pvalue="permutation"`` a permutation test for every method.
* **Bootstrap CIs** over checkpoints (seeded percentile bootstrap; in pooled analyses whole checkpoints are
  resampled, i.e. a cluster bootstrap).
* **Holm and Benjamini–Hochberg** adjusted p-values across the test sets of one (x, y, method, scope).
* **Granulated Kendall** (Jiang et al. 2020, "Fantastic generalization measures and where to find them",
  §4): for each training hyperparameter θ_i, ψ_i = mean over the groups of checkpoints whose other
  hyperparameters are all equal of the sign-based τ = Σ_{j≠k} sign(μ_j − μ_k)·sign(g_j − g_k) / (n(n − 1))
  (constant groups count with τ = 0); Ψ = mean of the ψ_i.  Axes are training-configuration columns, never
  outcomes such as dev EER (:func:`default_hyperparams`), or the ones the caller names.
* **Partial correlation** controlling for a column (numeric, or categorical one-hot): residualise x and y
  on the control (plus intercept) by least squares and correlate the residuals; Spearman partial ranks x, y
  and numeric controls first; p from Student's t with n − 2 − k degrees of freedom.
* **Domain shift** of a measure: each unseen test set vs the in-domain one, paired over checkpoints (mean
  difference, ratios, Wilcoxon signed-rank p).

Input policy: n < 3 or a constant input gives NaN with a ``note``, never an exception.  NaN values of x or y
(or a checkpoint missing from a test set) raise :class:`SharpscopeError` naming the pairs by default; with
``dropna=True`` those pairs are excluded and counted in the ``n_dropped`` column, never silently.

Layers (each imports only the ones above it): :mod:`.core` (array level: coefficients, p-values, bootstrap,
Holm/BH), :mod:`.selection` (results table -> paired (checkpoint, testset) rows; test-set order),
:mod:`.correlate`, :mod:`.kendall` (granulated Kendall), :mod:`.partial`, :mod:`.shift`.
"""

from .core import (
    KENDALL_EXACT_MAX_N,
    METHODS,
    SPEARMAN_EXACT_MAX_N,
    Coefficient,
    adjust_p,
    batch_coefficient,
    benjamini_hochberg,
    bootstrap_ci,
    coefficient,
    holm,
    pearson_rows,
)
from .correlate import correlate
from .kendall import (
    HYPERPARAM_KEYS,
    HYPERPARAM_PREFIXES,
    PSI_LABEL,
    NoHyperparameterAxesError,
    default_hyperparams,
    granulated_kendall,
    granulated_kendall_table,
    sign_kendall,
)
from .partial import partial_corr, partial_correlate
from .selection import (
    FULL_SUBSETS,
    GAP_COLUMNS,
    SCOPES,
    Selection,
    fmt_choices,
    in_domain_testset,
    ordered_testsets,
    paired_table,
    pick_level,
    pick_subset,
    require_columns,
    scope_groups,
    testset_order,
    testset_shift,
)
from .shift import domain_shift

__all__ = [
    "FULL_SUBSETS",
    "GAP_COLUMNS",
    "HYPERPARAM_KEYS",
    "HYPERPARAM_PREFIXES",
    "KENDALL_EXACT_MAX_N",
    "METHODS",
    "PSI_LABEL",
    "SCOPES",
    "SPEARMAN_EXACT_MAX_N",
    "Coefficient",
    "NoHyperparameterAxesError",
    "Selection",
    "adjust_p",
    "batch_coefficient",
    "benjamini_hochberg",
    "bootstrap_ci",
    "coefficient",
    "correlate",
    "default_hyperparams",
    "domain_shift",
    "fmt_choices",
    "granulated_kendall",
    "granulated_kendall_table",
    "holm",
    "in_domain_testset",
    "ordered_testsets",
    "paired_table",
    "partial_corr",
    "partial_correlate",
    "pearson_rows",
    "pick_level",
    "pick_subset",
    "require_columns",
    "scope_groups",
    "sign_kendall",
    "testset_order",
    "testset_shift",
]
