"""History: the queries of `report`, `plot` and the export (the last rows and the best of each evaluation,
metrics known, every ok row), read along the indexes so that they cost the same on a million rows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import and_, exists, func, or_, select, union_all
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, aliased

from evaluator.errors import DatabaseError
from evaluator.evaluation import MIN, Evaluation, History, Ranking, Status
from evaluator.schema import EvaluationRow, MetricRow, SeriesRow
from evaluator.store.database import Database, _reason
from evaluator.store.rows import _METRICS_CHUNK, _evaluation


class HistoryQueries(Database):
    """What `report`, `plot` and the export read."""

    def history(self, model_dir: str | None = None, last: int = 10, best_by: str | None = None,
                dataset: str | None = None, root: str | None = None) -> History:
        """The `last` highest-step rows of each evaluation (or of `model_dir`'s, or of those below
        `root`), and each one's best by `best_by` (default: accuracy, else loss) on `dataset`
        (default: the first set)."""
        with self.streaming_history(model_dir, last, best_by, dataset, root) as history:
            return dataclasses.replace(history, rows=list(history.rows))

    @contextmanager
    def streaming_history(self, model_dir: str | None = None, last: int = 10, best_by: str | None = None,
                          dataset: str | None = None, root: str | None = None) -> Iterator[History]:
        """Like `history`, with rows read from the database as they are consumed (JSON and CSV of
        any size in constant memory). Rows come per (model directory, name), oldest step first."""
        with self._reading() as session:
            groups = self._groups(session, model_dir, root)
            best = {group: found for group in groups
                    if (found := self._best(session, *group, best_by, dataset)) is not None}
            yield History(rows=self._rows(session, groups, last), best=best, best_by=best_by, dataset=dataset)

    def _rows(self, session: Session, groups: list[tuple[str, str]], last: int) -> Iterator[Evaluation]:
        try:
            for directory, name in groups:
                where = (EvaluationRow.model_dir == directory, EvaluationRow.name == name)
                # The highest steps, then rows without a step: each part read backwards along the
                # index (model_dir, name, step, id), which no one ORDER BY with NULLS LAST matches on
                # every backend.
                stepped = (select(EvaluationRow.id, EvaluationRow.step).where(*where, EvaluationRow.step.is_not(None))
                           .order_by(EvaluationRow.step.desc(), EvaluationRow.id.desc()).limit(last).subquery())
                unstepped = (select(EvaluationRow.id, EvaluationRow.step).where(*where, EvaluationRow.step.is_(None))
                             .order_by(EvaluationRow.id.desc()).limit(last).subquery())
                both = union_all(select(stepped), select(unstepped)).subquery()
                recent = (select(both.c.id).order_by(both.c.step.desc().nulls_last(), both.c.id.desc())
                          .limit(last).scalar_subquery())
                stmt = (select(EvaluationRow).where(EvaluationRow.id.in_(recent))
                        .order_by(EvaluationRow.step.asc().nulls_first(), EvaluationRow.id.asc())
                        .execution_options(yield_per=_METRICS_CHUNK))
                for chunk in session.scalars(stmt).partitions():
                    yield from self._with_metrics(session, chunk)
        except DBAPIError as err:
            raise DatabaseError(f"cannot read {self.url}: {_reason(err)}") from err

    def ok_rows(self, model_dir: str, name: str) -> Iterator[Evaluation]:
        """Every ok row of one evaluation with its metrics, by step (what actions catch up with)."""
        with self._reading() as session:
            stmt = (select(EvaluationRow).where(EvaluationRow.model_dir == model_dir, EvaluationRow.name == name,
                                                EvaluationRow.status == Status.OK.value)
                    .order_by(EvaluationRow.step.asc().nulls_first(), EvaluationRow.id.asc())
                    .execution_options(yield_per=_METRICS_CHUNK))
            for chunk in session.scalars(stmt).partitions():
                yield from self._with_metrics(session, chunk)

    @staticmethod
    def _with_metrics(session: Session, rows: Iterable[EvaluationRow]) -> Iterator[Evaluation]:
        rows = list(rows)
        found: dict[int, list[MetricRow]] = {}
        for metric in session.scalars(select(MetricRow).where(MetricRow.evaluation_id.in_([r.id for r in rows]))
                                      .order_by(MetricRow.id)):
            found.setdefault(metric.evaluation_id, []).append(metric)
        for row in rows:
            yield _evaluation(row, found.get(row.id, []))

    def top(self, model_dir: str, name: str, metric: str | None, limit: int) -> Ranking:
        """The evaluation's best `limit` ok rows by `metric` (`NAME` or `SET/NAME`; default: accuracy,
        else loss), best first, ties to the lowest step: what `report --best` names first."""
        dataset, _, best_by = (metric or "").rpartition("/")
        with self._reading() as session:
            chosen, goal, rows = self._top(session, model_dir, name, best_by or None, dataset or None, limit)
            return Ranking(metric if metric and chosen == best_by else chosen, goal,
                           list(self._with_metrics(session, rows)) if rows else [])

    def _best(self, session: Session, model_dir: str, name: str, best_by: str | None,
              dataset: str | None) -> Evaluation | None:
        """The evaluation's best ok row by a metric, in the metric's direction (lowest step on ties)."""
        _, _, rows = self._top(session, model_dir, name, best_by, dataset, 1)
        return next(self._with_metrics(session, rows)) if rows else None

    def _top(self, session: Session, model_dir: str, name: str, best_by: str | None, dataset: str | None,
             limit: int) -> tuple[str, str | None, list[EvaluationRow]]:
        """(the metric, its goal, the best `limit` rows by it): read along an index, whatever the history's size."""
        where = (EvaluationRow.model_dir == model_dir, EvaluationRow.name == name,
                 EvaluationRow.status == Status.OK.value)
        if dataset is None and best_by in (None, "accuracy", "loss"):  # the default set's columns, indexed
            # By accuracy; by loss when asked, or when no row has an accuracy (a regression).
            columns = {None: (EvaluationRow.accuracy, EvaluationRow.loss), "accuracy": (EvaluationRow.accuracy,),
                       "loss": (EvaluationRow.loss,)}[best_by]
            top: list[EvaluationRow] = []
            for column in columns:
                order = column.asc() if column is EvaluationRow.loss else column.desc()
                top = list(session.scalars(select(EvaluationRow).where(*where, column.is_not(None))
                                           .order_by(order, EvaluationRow.step.asc()).limit(limit)))
                if top:
                    break
            chosen = column.key
            return chosen, (MIN if chosen == "loss" else "max") if top else None, top
        dataset = dataset or self._default_set(session, model_dir, name)
        # The metric's rows of this evaluation on that set are one series: index (series_id, value).
        series: dict[str, int | None] = {}

        def goal_of(metric: str) -> str | None:
            series[metric] = session.scalar(select(SeriesRow.id).where(
                SeriesRow.model_dir == model_dir, SeriesRow.name == name, SeriesRow.dataset == dataset,
                SeriesRow.metric == metric))
            if series[metric] is None:
                return None
            # (ordered, so that PostgreSQL too reads it from the index, not by scanning `metrics`)
            return session.scalar(select(MetricRow.goal).join(EvaluationRow, MetricRow.evaluation_id == EvaluationRow.id)
                                  .where(*where, MetricRow.series_id == series[metric])
                                  .order_by(MetricRow.value).limit(1))

        goal = goal_of(best_by) if best_by else None
        if best_by is None:  # accuracy, else (a regression) loss, on that set
            best_by, goal = next(((m, g) for m in ("accuracy", "loss") if (g := goal_of(m)) is not None),
                                 ("accuracy", None))
        if goal is None:
            return best_by, None, []
        metric = (MetricRow.evaluation_id == EvaluationRow.id, MetricRow.series_id == series[best_by])
        order = MetricRow.value.asc() if goal == MIN else MetricRow.value.desc()
        return best_by, goal, list(session.scalars(select(EvaluationRow).join(MetricRow, and_(*metric)).where(*where)
                                                   .order_by(order, EvaluationRow.step.asc()).limit(limit)))

    def known_metrics(self, model_dir: str | None = None, root: str | None = None) -> dict[str, set[str]]:
        """Validation set -> the metric names recorded for it (`report` checks what it is asked for)."""
        with self._reading() as session:  # `series`: a few rows, not every metric
            stmt = (select(SeriesRow.dataset, SeriesRow.metric).distinct()
                    .where(exists().where(MetricRow.series_id == SeriesRow.id)))
            if model_dir is not None:
                stmt = stmt.where(SeriesRow.model_dir == model_dir)
            if root is not None:
                stmt = stmt.where(_below(root, SeriesRow.model_dir))
            found: dict[str, set[str]] = {}
            for dataset, name in session.execute(stmt):
                found.setdefault(dataset, set()).add(name)
            return found

    @staticmethod
    def _default_set(session: Session, model_dir: str, name: str) -> str | None:
        """The first validation set of the evaluation's newest row with metrics (rows read newest
        first along the index (model_dir, name, id) until one has metrics)."""
        newest = (select(EvaluationRow.id)
                  .where(EvaluationRow.model_dir == model_dir, EvaluationRow.name == name,
                         exists().where(MetricRow.evaluation_id == EvaluationRow.id))
                  .order_by(EvaluationRow.id.desc()).limit(1).scalar_subquery())
        return session.scalar(select(MetricRow.dataset).where(MetricRow.evaluation_id == newest)
                              .order_by(MetricRow.id.asc()).limit(1))

    @staticmethod
    def _groups(session: Session, model_dir: str | None, root: str | None = None) -> list[tuple[str, str]]:
        """Each (model directory, name) that has rows, in order: a skip scan of the index on
        (model_dir, name, ...), a recursive query that jumps from one evaluation's first row to the
        next evaluation's (the next name in the directory, else the next directory's first), an index
        seek or two per evaluation instead of a read of every row."""
        row = aliased(EvaluationRow)
        # (>= '': every directory; it makes the first row an index seek, not the start of a scan)
        first = (select(row.model_dir, row.name).where(row.model_dir >= "", *(
                     (row.model_dir == model_dir,) if model_dir is not None else ()))
                 .order_by(row.model_dir, row.name).limit(1).subquery())
        walk = select(first.c.model_dir, first.c.name).cte("walk", recursive=True)
        next_name = (select(row.id).where(row.model_dir == walk.c.model_dir, row.name > walk.c.name)
                     .order_by(row.name).limit(1).scalar_subquery())
        next_dir = (select(row.id).where(row.model_dir > walk.c.model_dir)
                    .order_by(row.model_dir, row.name).limit(1).scalar_subquery())
        following = next_name if model_dir is not None else func.coalesce(next_name, next_dir)
        walk = walk.union_all(select(EvaluationRow.model_dir, EvaluationRow.name)
                              .join_from(walk, EvaluationRow, EvaluationRow.id == following))
        stmt = select(walk.c.model_dir, walk.c.name)
        if root is not None:
            stmt = stmt.where(_below(root, walk.c.model_dir))
        return [(d, n) for d, n in session.execute(stmt.order_by(walk.c.model_dir, walk.c.name))]


def _below(root: str, column: Any = EvaluationRow.model_dir) -> Any:
    """The rows of `root` and of every model directory under it (not a sibling that merely starts alike)."""
    root = root.rstrip("/")
    return or_(column == root, column.startswith(root + "/", autoescape=True))
