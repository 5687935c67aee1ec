"""
WOW's data path: moving virtual-network frames between nodes many packets per
Python call.

How the IP router plugs these in (see L{wow.datapath.forwarder.PointToPoint},
which does exactly this for one fixed peer):

  - TAP side: L{tapoffload.OffloadTap} (C{read_batch}, C{writev}, C{fileno},
    C{vnet_hdr_len}).  Each buffer read is C{vnet_hdr_len} bytes of virtio-net
    header then the Ethernet frame.
  - To send a frame: C{message = vnet.wire_from_raw(hdr) + frame}, then
    C{pieces.pack(msg_id, message, piece_payload, prefix=overlay_header)} gives
    one buffer of equal-size datagrams that C{udpgso.GsoUdp.send_buffer} sends
    in one system call.
  - On receive: C{GsoUdp.recv_batch} gives (buffer, segment size, address);
    C{pieces.whole_run}/C{run_chunks} take a whole message out of a GRO burst,
    anything else goes piece by piece through C{pieces.Reassembler.add}; then
    C{vnet.from_wire} + C{vnet.check} before writing header and frame to the TAP
    (or C{vnet.plain_frames} for a TAP without the header).
"""
