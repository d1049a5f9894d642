"""A lexical price signal: character n-grams of the title -> log price (ridge).

Sentence embeddings blur the words that set a price within a family ("SET OF 3", "JUMBO", "LARGE");
character n-grams keep them. The head receives this model's prediction as one feature, out-of-fold on
its own training rows, so it learns how far to trust it.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import Ridge
from sklearn.model_selection import KFold
from sklearn.pipeline import make_pipeline


class LexicalPricer(BaseEstimator, RegressorMixin):
    def __init__(self, alpha: float = 1.0, ngram_range: tuple[int, int] = (2, 5), n_folds: int = 5,
                 random_state: int = 0):
        self.alpha = alpha
        self.ngram_range = ngram_range
        self.n_folds = n_folds
        self.random_state = random_state

    def _pipeline(self):
        return make_pipeline(TfidfVectorizer(analyzer="char_wb", ngram_range=self.ngram_range, min_df=2,
                                             sublinear_tf=True, lowercase=True), Ridge(alpha=self.alpha))

    def fit(self, titles, y):
        self.model_ = self._pipeline().fit(list(titles), np.asarray(y, dtype=np.float64))
        return self

    def predict(self, titles):
        return self.model_.predict(list(titles))

    def fit_out_of_fold(self, titles, y) -> np.ndarray:
        """Fit on everything; return each row's prediction from a model that did not see it."""
        titles, y = list(titles), np.asarray(y, dtype=np.float64)
        oof = np.empty(len(y))
        folds = KFold(self.n_folds, shuffle=True, random_state=self.random_state)
        for train, test in folds.split(titles):
            model = self._pipeline().fit([titles[i] for i in train], y[train])
            oof[test] = model.predict([titles[i] for i in test])
        self.fit(titles, y)
        return oof
