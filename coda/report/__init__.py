"""Report stage: table1.csv, ablation.csv, figures and a generated README (docs/evaluation.md)."""
from .build import build_report
from .tables import ABLATION_COLUMNS, TABLE1_COLUMNS

__all__ = ["build_report", "TABLE1_COLUMNS", "ABLATION_COLUMNS"]
