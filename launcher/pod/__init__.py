"""What runs inside every training pod (and on this machine for the local backend): the
bootstrap of one node, its log relay, the rank-table rendezvous and the data staging."""
