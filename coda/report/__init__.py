"""Report stage: table1.csv, ablation.csv, figures and a generated README (design/evaluation.md)."""
from .build import build_report
from .tables import ABLATION_COLUMNS, ABLATION_LADDER, TABLE1_COLUMNS

__all__ = ["build_report", "TABLE1_COLUMNS", "ABLATION_COLUMNS", "ABLATION_LADDER"]
