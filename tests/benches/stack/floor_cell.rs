//! The socket floor's throughput cells (see [`pvusb_tests::floor`]) in the bench's terms.

use pvusb_tests::floor::Echoed;

use super::Cell;

/// A socket-floor cell, with the CPU split of its two processes (s/GiB).
#[derive(Clone, Copy, Default)]
pub struct FloorCell {
    /// As the other cells (CPU: both processes).
    pub cell: Cell,
    /// The client's CPU, s/GiB.
    pub client: f64,
    /// The echo process's CPU, s/GiB.
    pub echo: f64,
}

impl FloorCell {
    pub fn of(e: Echoed) -> FloorCell {
        let gib = e.bytes as f64 / (1u64 << 30) as f64;
        let (client, echo) = (
            e.cpu_client.as_secs_f64() / gib,
            e.cpu_echo.as_secs_f64() / gib,
        );
        FloorCell {
            cell: Cell {
                mb_s: e.bytes as f64 / e.secs / 1e6,
                urbs_s: e.messages as f64 / e.secs,
                cpu_s_per_gib: client + echo,
            },
            client,
            echo,
        }
    }

    /// The cell with the median throughput (`None` when the floor is skipped).
    pub fn median(mut cells: Vec<FloorCell>) -> Option<FloorCell> {
        cells.sort_by(|a, b| a.cell.mb_s.total_cmp(&b.cell.mb_s));
        cells.get(cells.len() / 2).copied()
    }
}
