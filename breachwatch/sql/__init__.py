"""SQL understanding for audit records: tables, columns, subject ids, unbounded reads."""

from breachwatch.sql.analyze import Predicate, Relation, StatementShape, analyze
from breachwatch.sql.enrich import SqlEnricher
from breachwatch.sql.subjects import (
    bind_parameters,
    is_unbounded,
    subject_column,
    subject_ids,
    subject_refs,
)

__all__ = [
    "Predicate",
    "Relation",
    "SqlEnricher",
    "StatementShape",
    "analyze",
    "bind_parameters",
    "is_unbounded",
    "subject_column",
    "subject_ids",
    "subject_refs",
]
