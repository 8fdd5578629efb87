"""Publishing: model cards rendered from `model_cards/` (`cards`) and pushing a run's models (`push`)."""
