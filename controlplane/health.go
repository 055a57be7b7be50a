package controlplane

// HoldsLease reports whether this replica holds the background lease (the
// one that reconciles after directory changes); false before Start. It is
// for health and metrics endpoints: every replica serves requests either
// way.
func (s *Service) HoldsLease() bool {
	l := s.lease
	return l != nil && l.Held()
}
