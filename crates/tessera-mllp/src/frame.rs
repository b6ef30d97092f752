//! MLLP framing: a message is `VT` (0x0b), the bytes, `FS` (0x1c), `CR` (0x0d).

const VT: u8 = 0x0b;
const FS: u8 = 0x1c;
const CR: u8 = 0x0d;

/// A message framed for the wire.
pub fn wrap(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 3);
    out.push(VT);
    out.extend_from_slice(message);
    out.push(FS);
    out.push(CR);
    out
}

/// Collects bytes as they arrive and yields whole frames (or why a frame is refused: too
/// large, or bytes outside a frame).
pub struct FrameReader {
    buf: Vec<u8>,
    max: usize,
}

impl FrameReader {
    pub fn new(max: usize) -> FrameReader {
        FrameReader { buf: Vec::new(), max }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete frame, if one has arrived.
    pub fn next_frame(&mut self) -> Option<Result<Vec<u8>, String>> {
        // Bytes before a start block (line noise, a stray CR) are skipped.
        match self.buf.iter().position(|b| *b == VT) {
            Some(0) => {}
            Some(i) => {
                let junk: Vec<u8> = self.buf.drain(..i).collect();
                if junk.iter().any(|b| !b.is_ascii_whitespace()) {
                    return Some(Err("bytes outside an MLLP frame were discarded".to_string()));
                }
            }
            None => {
                if self.buf.len() > self.max {
                    self.buf.clear();
                    return Some(Err("data without an MLLP start block".to_string()));
                }
                return None;
            }
        }
        let end = self.buf.windows(2).position(|w| w == [FS, CR]);
        match end {
            Some(e) => {
                let frame: Vec<u8> = self.buf[1..e].to_vec();
                self.buf.drain(..e + 2);
                if frame.len() > self.max {
                    return Some(Err(format!("the message is larger than {} bytes", self.max)));
                }
                Some(Ok(frame))
            }
            None if self.buf.len() > self.max + 3 => {
                self.buf.clear();
                Some(Err(format!("the message is larger than {} bytes", self.max)))
            }
            None => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_arrive_in_pieces_and_back_to_back() {
        let mut r = FrameReader::new(1024);
        let mut bytes = wrap(b"MSH|one");
        bytes.extend(wrap(b"MSH|two"));
        for chunk in bytes.chunks(3) {
            r.push(chunk);
        }
        assert_eq!(r.next_frame(), Some(Ok(b"MSH|one".to_vec())));
        assert_eq!(r.next_frame(), Some(Ok(b"MSH|two".to_vec())));
        assert_eq!(r.next_frame(), None);
    }

    #[test]
    fn oversized_and_stray_bytes_are_refused() {
        let mut r = FrameReader::new(4);
        r.push(&wrap(b"too long"));
        assert!(matches!(r.next_frame(), Some(Err(_))));
        let mut r = FrameReader::new(100);
        r.push(b"junk");
        r.push(&wrap(b"ok"));
        assert!(matches!(r.next_frame(), Some(Err(_))));
        assert_eq!(r.next_frame(), Some(Ok(b"ok".to_vec())));
    }
}
