"""The published numbers our suites print beside their own: Sun et al. Tables 2 and 3,
Chemseddine et al. section 4, and Tian et al. 2024 (LFIS) on Neal's funnel."""

from __future__ import annotations

__all__ = ["COLUMNS", "HIGHER_IS_BETTER", "PUBLISHED", "TITLES", "published_row"]

_SUN_T2_COLUMNS = ("dlogZ", "w2", "ess", "dstd", "sec_per_it")
# pis_* / dis_*: the trajectory baselines PIS-KL, PIS-LV, DIS-KL, DIS-LV (Sun et al.'s [78], [5],
# [57]); every other row is a PINN loss.
_SUN_T2 = {
    "GMM d=2": {
        "pis_kl": (1.094, 0.467, 0.0051, 1.937, 0.503),
        "pis_lv": (0.046, 0.020, 0.9093, 0.023, 0.500),
        "dis_kl": (1.551, 0.064, 0.0226, 2.522, 0.565),
        "dis_lv": (0.056, 0.020, 0.8660, 0.004, 0.536),
        "logfp": (0.000, 0.020, 1.0000, 0.004, 0.011),
        "logfp_anneal": (5.364, 0.172, 0.1031, 0.209, 0.062),
        "score": (0.009, 0.020, 0.9818, 0.096, 0.013),
        "sb": (0.002, 0.020, 0.9959, 0.050, 0.017),
        "logce": (0.000, 0.020, 1.0000, 0.003, 0.008),
        "logce_anneal": (4.227, 0.044, 0.1427, 0.753, 0.020),
        "ot": (0.005, 0.057, 0.9932, 0.065, 0.080),
    },
    "MW 5/5/4": {
        "pis_kl": (3.567, 1.699, 0.0004, 1.409, 0.441),
        "pis_lv": (0.214, 0.121, 0.6744, 0.001, 0.402),
        "dis_kl": (1.462, 1.175, 0.0012, 0.431, 0.490),
        "dis_lv": (0.375, 0.120, 0.4519, 0.001, 0.437),
        "logfp": (0.161, 0.123, 0.8167, 0.016, 0.017),
        "logfp_anneal": (0.842, 0.257, 0.3464, 0.004, 0.014),
        "score": (3.969, 0.427, 0.0124, 0.004, 0.026),
        "sb": (7.855, 0.328, 0.0314, 0.045, 0.029),
        "logce": (0.000, 0.118, 0.9993, 0.000, 0.008),
        "logce_anneal": (0.025, 0.121, 0.9506, 0.005, 0.010),
        "ot": (0.010, 0.120, 0.9862, 0.002, 0.020),
    },
    "MW 50/5/2": {
        "pis_kl": (0.101, 6.821, 0.8172, 0.001, 0.479),
        "pis_lv": (0.087, 6.823, 0.8453, 0.000, 0.416),
        "dis_kl": (1.785, 6.854, 0.0225, 0.009, 0.522),
        "dis_lv": (1.783, 6.855, 0.0227, 0.009, 0.450),
        "logfp": (0.038, 6.820, 0.9511, 0.001, 0.050),
        "logfp_anneal": (0.270, 6.899, 0.9171, 0.021, 0.067),
        "score": (1.989, 6.803, 0.1065, 0.016, 0.053),
        "sb": (189.71, 7.552, 0.0106, 0.051, 0.053),
        "logce": (0.003, 6.815, 0.9937, 0.002, 0.023),
        "logce_anneal": (1.759, 6.821, 0.2100, 0.017, 0.043),
        "ot": (0.104, 6.824, 0.9027, 0.001, 0.043),
    },
}

_SUN_T3_COLUMNS = ("loss", "dlogZ", "w2", "one_minus_ess", "dstd", "sec_per_it")
_SUN_T3 = {
    "GMM d=2": {
        "adam": (4.62e-4, 3.73e-5, 2.03e-2, 3.15e-5, 3.16e-3, 0.007),
        "adam_gn": (1.62e-4, 2.91e-6, 2.03e-2, 7.23e-6, 1.33e-3, 6.071),
    },
    "MW 5/5/4": {
        "adam": (3.27e-3, 8.79e-5, 1.18e-1, 6.62e-4, 3.06e-4, 0.008),
        "adam_gn": (2.57e-3, 2.15e-4, 1.18e-1, 1.56e-4, 1.32e-4, 7.486),
    },
}

_CHEM_COLUMNS = ("ess", "nll", "energy_distance")
_CHEM = {
    "GMM-40": {
        "linear": (0.183, 8.657, 0.247),
        "learned": (0.605, 6.894, 0.058),
        "gradflow": (0.992, 6.864, 0.0021),
    },
    "ManyWell-8": {
        "linear": (0.985, 9.689, 0.278),
        "learned": (0.999, 6.876, 9e-5),
        "gradflow": (0.991, 6.989, 8e-4),
    },
}

# Tian et al. 2024, "Liouville Flow Importance Sampler" (LFIS), Funnel-10 (Neal's funnel,
# x_0 ~ N(0, 3^2)): importance-weighted ESS and the signed error of the importance-sampling
# log Z estimate, after 27.6 minutes of training on one A100 GPU.
_LFIS_COLUMNS = ("ess", "log_Z_error_is")
_LFIS = {"Funnel-10": {"lfis": (0.97, -0.07)}}


def _table(columns, rows) -> dict[str, dict[str, dict[str, float]]]:
    return {
        problem: {
            method: dict(zip(columns, values, strict=True)) for method, values in methods.items()
        }
        for problem, methods in rows.items()
    }


PUBLISHED: dict[str, dict[str, dict[str, dict[str, float]]]] = {
    "sun_table2": _table(_SUN_T2_COLUMNS, _SUN_T2),
    "sun_table3": _table(_SUN_T3_COLUMNS, _SUN_T3),
    "chemseddine": _table(_CHEM_COLUMNS, _CHEM),
    "tian_lfis": _table(_LFIS_COLUMNS, _LFIS),
}
"""``PUBLISHED[table][problem][method][metric]``. Chemseddine et al.'s "NLL" column is the
forward NLL on target samples; their learned GMM-40 row without the wider prior is used."""

_MODE_COLUMNS = ("modes_covered", "mode_tv")
COLUMNS = {
    "sun_table2": (*_SUN_T2_COLUMNS, *_MODE_COLUMNS),
    "sun_table3": (*_SUN_T3_COLUMNS, *_MODE_COLUMNS),
    "chemseddine": (*_CHEM_COLUMNS, "cross_entropy", *_MODE_COLUMNS),
    "tian_lfis": (*_LFIS_COLUMNS, "dlogZ", "ess_fwd", "elbo", "eubo", "dstd"),
}
TITLES = {
    "sun_table2": "Sun et al., Table 2",
    "sun_table3": "Sun et al., Table 3 (logCE: Adam vs Adam then Gauss-Newton)",
    "chemseddine": "Chemseddine et al., Tables 1 and 2",
    "tian_lfis": "Tian et al. 2024 (LFIS), Funnel-10: 27.6 min of training on one A100",
}

HIGHER_IS_BETTER = {"ess", "ess_fwd", "emc", "elbo"}


def published_row(table: str, problem: str, method: str) -> dict[str, float]:
    """The published metrics of one row; a KeyError names what exists."""
    try:
        return PUBLISHED[table][problem][method]
    except KeyError:
        problems = {t: {p: list(m) for p, m in v.items()} for t, v in PUBLISHED.items()}
        raise KeyError(
            f"no published row {table}/{problem}/{method}; available: {problems}"
        ) from None
