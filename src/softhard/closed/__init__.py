"""Closed forms by topic, each checked against its sampled twin in the tests: normal building blocks
(:mod:`.normal`), boundary and coarea constants (:mod:`.boundary`), risks and gaps (:mod:`.risk`),
Gaussian moments over polyhedra (:mod:`.moments`) and the §6 balance moments (:mod:`.balance`)."""
