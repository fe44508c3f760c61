"""Why a run got its result: anomalies found in its tables, counterfactual routing regret, a request's life."""
