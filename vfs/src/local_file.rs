//! Files that never leave the client: rollback journals, statement journals,
//! temp databases. They live in this process's memory and die with it; the
//! server only ever holds committed versions, so there is no hot journal to find.

#[derive(Default)]
pub struct LocalFile {
    data: Vec<u8>,
}

impl LocalFile {
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> usize {
        let start = (offset as usize).min(self.data.len());
        let n = (self.data.len() - start).min(buf.len());
        buf[..n].copy_from_slice(&self.data[start..start + n]);
        buf[n..].fill(0);
        n
    }

    pub fn write(&mut self, offset: u64, data: &[u8]) {
        let end = offset as usize + data.len();
        if self.data.len() < end {
            self.data.resize(end, 0);
        }
        self.data[offset as usize..end].copy_from_slice(data);
    }

    pub fn truncate(&mut self, size: u64) {
        self.data.truncate(size as usize);
    }

    pub fn size(&self) -> u64 {
        self.data.len() as u64
    }
}
