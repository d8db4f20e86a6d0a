"""fal's queue protocol behind one interface (:mod:`.base`): in process (:mod:`.local`) or shared
by every replica through Redis (:mod:`.redis`); finished requests' webhooks (:mod:`.webhooks`)."""
