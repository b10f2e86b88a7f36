//! A driver for the Analog Devices ADXL345 3-axis accelerometer over I2C, on the
//! embedded-hal 1.0 [`I2c`] trait.
//!
//! Only what the sensor input needs: [`Adxl345::probe`] checks the device id,
//! [`Adxl345::configure`] sets the output data rate and range (full resolution, FIFO in
//! stream mode, measuring), [`Adxl345::fifo_len`] says how many samples wait in the
//! device's 32-sample FIFO and [`Adxl345::read_sample`] reads the oldest one with one
//! 6-byte burst read (DATAX0..DATAZ1; reading DATAZ1 pops the FIFO).
//!
//! Written here rather than taken from a crate. The embedded-hal 1.0 ADXL345 crates
//! (`adxl345_driver2` 2.0.1, last released March 2024 by one maintainer; `lh-adxl345`)
//! map the whole register set behind their own reader/writer or register-bus traits
//! and bitfield types (`bitflags`, `c2rust-bitfields`) with one catch-all error. The
//! sensor input needs six registers, an error that tells a bus failure from a wrong
//! chip (what the agent logs), and transactions the embedded-hal-mock tests can pin
//! down byte for byte.
//!
//! Register transactions, all to the 7-bit address given (0x53 with ALT ADDRESS low,
//! 0x1D with it high):
//!
//! | step | transaction |
//! |---|---|
//! | probe | write `[0x00]`, read 1 byte; expect `0xE5` |
//! | configure | write `[0x2D, 0x00]` (standby), `[0x31, 0x08 \| range]` (full resolution), `[0x2C, rate]`, `[0x38, 0x80]` (FIFO stream mode), `[0x2D, 0x08]` (measure) |
//! | FIFO length | write `[0x39]`, read 1 byte; entries are bits 0–5 |
//! | sample | write `[0x32]`, read 6 bytes: x, y, z as little-endian `i16` |

use core::fmt;

use embedded_hal::i2c::{ErrorKind, I2c};

/// The I2C address with the ALT ADDRESS pin low (the usual breakout default).
pub const ADDRESS_ALT_LOW: u8 = 0x53;
/// The I2C address with the ALT ADDRESS pin high.
pub const ADDRESS_ALT_HIGH: u8 = 0x1D;
/// What the DEVID register of an ADXL345 holds.
pub const DEVICE_ID: u8 = 0xE5;
/// Samples the device's FIFO holds.
pub const FIFO_DEPTH: usize = 32;
/// Acceleration per LSB in full-resolution mode, in g (3.9 mg typical, every range).
pub const G_PER_LSB: f32 = 0.0039;

/// The registers the driver uses.
pub mod reg {
    /// Device id, read-only, 0xE5.
    pub const DEVID: u8 = 0x00;
    /// Output data rate in bits 0–3.
    pub const BW_RATE: u8 = 0x2C;
    /// Power control; bit 3 (0x08) is Measure.
    pub const POWER_CTL: u8 = 0x2D;
    /// Data format; bit 3 (0x08) is FULL_RES, bits 0–1 the range.
    pub const DATA_FORMAT: u8 = 0x31;
    /// First of the six data registers (X0, X1, Y0, Y1, Z0, Z1).
    pub const DATAX0: u8 = 0x32;
    /// FIFO control; bits 6–7 the mode (0b10 stream).
    pub const FIFO_CTL: u8 = 0x38;
    /// FIFO status; bits 0–5 the number of entries.
    pub const FIFO_STATUS: u8 = 0x39;
    /// POWER_CTL: measuring.
    pub const MEASURE: u8 = 0x08;
    /// DATA_FORMAT: full resolution (3.9 mg/LSB at every range).
    pub const FULL_RES: u8 = 0x08;
    /// FIFO_CTL: stream mode (the FIFO keeps the newest 32 samples).
    pub const FIFO_STREAM: u8 = 0x80;
}

/// An output data rate of the ADXL345 (the BW_RATE codes the sensor input offers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rate {
    /// 25 Hz.
    Hz25,
    /// 50 Hz.
    Hz50,
    /// 100 Hz.
    Hz100,
    /// 200 Hz.
    Hz200,
    /// 400 Hz.
    Hz400,
    /// 800 Hz.
    Hz800,
    /// 1600 Hz.
    Hz1600,
    /// 3200 Hz.
    Hz3200,
}

impl Rate {
    /// Every rate, slowest first.
    pub const ALL: [Rate; 8] = [
        Rate::Hz25,
        Rate::Hz50,
        Rate::Hz100,
        Rate::Hz200,
        Rate::Hz400,
        Rate::Hz800,
        Rate::Hz1600,
        Rate::Hz3200,
    ];

    /// The rate in samples per second.
    pub fn hz(self) -> u32 {
        25 << (self.code() - 0x08)
    }

    /// The BW_RATE register value (normal power).
    pub fn code(self) -> u8 {
        match self {
            Rate::Hz25 => 0x08,
            Rate::Hz50 => 0x09,
            Rate::Hz100 => 0x0A,
            Rate::Hz200 => 0x0B,
            Rate::Hz400 => 0x0C,
            Rate::Hz800 => 0x0D,
            Rate::Hz1600 => 0x0E,
            Rate::Hz3200 => 0x0F,
        }
    }

    /// The rate of `hz` samples per second, if the device has it.
    pub fn from_hz(hz: u32) -> Option<Rate> {
        Rate::ALL.into_iter().find(|r| r.hz() == hz)
    }

    /// The rate of a BW_RATE code (bits 0–3), if it is one of [`Rate::ALL`].
    pub fn from_code(code: u8) -> Option<Rate> {
        Rate::ALL.into_iter().find(|r| r.code() == code & 0x0F)
    }
}

/// A measurement range of the ADXL345.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Range {
    /// ±2 g.
    G2,
    /// ±4 g.
    G4,
    /// ±8 g.
    G8,
    /// ±16 g.
    G16,
}

impl Range {
    /// The range in g.
    pub fn g(self) -> u8 {
        2 << self.code()
    }

    /// The DATA_FORMAT range bits.
    pub fn code(self) -> u8 {
        match self {
            Range::G2 => 0,
            Range::G4 => 1,
            Range::G8 => 2,
            Range::G16 => 3,
        }
    }

    /// The range of ±`g`, if the device has it (2, 4, 8 or 16).
    pub fn from_g(g: u8) -> Option<Range> {
        [Range::G2, Range::G4, Range::G8, Range::G16]
            .into_iter()
            .find(|r| r.g() == g)
    }
}

/// One acceleration sample in raw LSBs (full resolution: [`G_PER_LSB`] g each).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Sample {
    /// X axis.
    pub x: i16,
    /// Y axis.
    pub y: i16,
    /// Z axis.
    pub z: i16,
}

impl Sample {
    /// The magnitude of the acceleration vector in g (gravity included).
    pub fn magnitude_g(&self) -> f32 {
        let (x, y, z) = (f32::from(self.x), f32::from(self.y), f32::from(self.z));
        (x * x + y * y + z * z).sqrt() * G_PER_LSB
    }

    /// Decodes the six data registers, DATAX0 first.
    pub fn from_registers(bytes: [u8; 6]) -> Sample {
        Sample {
            x: i16::from_le_bytes([bytes[0], bytes[1]]),
            y: i16::from_le_bytes([bytes[2], bytes[3]]),
            z: i16::from_le_bytes([bytes[4], bytes[5]]),
        }
    }
}

/// What can go wrong talking to the device. `E` is the bus's error.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error<E> {
    /// The I2C transfer failed (no device at the address answers with a NACK).
    Bus(E),
    /// Something answered at the address, but its DEVID is not an ADXL345's.
    WrongDevice {
        /// The address probed.
        address: u8,
        /// What DEVID held.
        found: u8,
    },
}

impl<E: embedded_hal::i2c::Error> fmt::Display for Error<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Bus(e) => match e.kind() {
                ErrorKind::NoAcknowledge(_) => write!(
                    f,
                    "the ADXL345 does not answer on the I2C bus (no acknowledge: check the \
                     wiring, the bus and the address): {e:?}"
                ),
                _ => write!(f, "I2C transfer to the ADXL345 failed: {e:?}"),
            },
            Error::WrongDevice { address, found } => write!(
                f,
                "the device at I2C address {address:#04x} has id {found:#04x}, not an ADXL345 \
                 ({DEVICE_ID:#04x})"
            ),
        }
    }
}

impl<E: embedded_hal::i2c::Error> core::error::Error for Error<E> {}

/// An ADXL345 on an I2C bus.
#[derive(Debug)]
pub struct Adxl345<I2C> {
    i2c: I2C,
    address: u8,
}

impl<I2C: I2c> Adxl345<I2C> {
    /// Checks that an ADXL345 answers at `address` on `i2c` (reads DEVID) and returns
    /// the driver; the device is left as it was.
    ///
    /// # Errors
    ///
    /// [`Error::Bus`] if the transfer fails (nothing at the address),
    /// [`Error::WrongDevice`] if DEVID is not 0xE5.
    pub fn probe(mut i2c: I2C, address: u8) -> Result<Adxl345<I2C>, Error<I2C::Error>> {
        let mut id = [0u8];
        i2c.write_read(address, &[reg::DEVID], &mut id)
            .map_err(Error::Bus)?;
        if id[0] != DEVICE_ID {
            return Err(Error::WrongDevice {
                address,
                found: id[0],
            });
        }
        Ok(Adxl345 { i2c, address })
    }

    /// Puts the device in standby, sets full resolution at `range`, the output data
    /// `rate` and the FIFO in stream mode, then starts measuring.
    ///
    /// # Errors
    ///
    /// [`Error::Bus`] if a write fails.
    pub fn configure(&mut self, rate: Rate, range: Range) -> Result<(), Error<I2C::Error>> {
        for (register, value) in [
            (reg::POWER_CTL, 0),
            (reg::DATA_FORMAT, reg::FULL_RES | range.code()),
            (reg::BW_RATE, rate.code()),
            (reg::FIFO_CTL, reg::FIFO_STREAM),
            (reg::POWER_CTL, reg::MEASURE),
        ] {
            self.i2c
                .write(self.address, &[register, value])
                .map_err(Error::Bus)?;
        }
        Ok(())
    }

    /// How many samples wait in the FIFO (0 to 32).
    ///
    /// # Errors
    ///
    /// [`Error::Bus`] if the transfer fails.
    pub fn fifo_len(&mut self) -> Result<usize, Error<I2C::Error>> {
        let mut status = [0u8];
        self.i2c
            .write_read(self.address, &[reg::FIFO_STATUS], &mut status)
            .map_err(Error::Bus)?;
        Ok(usize::from(status[0] & 0x3F))
    }

    /// Reads the oldest sample with one 6-byte burst read (which pops it from the FIFO).
    ///
    /// # Errors
    ///
    /// [`Error::Bus`] if the transfer fails.
    pub fn read_sample(&mut self) -> Result<Sample, Error<I2C::Error>> {
        let mut data = [0u8; 6];
        self.i2c
            .write_read(self.address, &[reg::DATAX0], &mut data)
            .map_err(Error::Bus)?;
        Ok(Sample::from_registers(data))
    }

    /// The I2C address in use.
    pub fn address(&self) -> u8 {
        self.address
    }

    /// Gives the bus back.
    pub fn release(self) -> I2C {
        self.i2c
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use embedded_hal::i2c::NoAcknowledgeSource;
    use embedded_hal_mock::eh1::i2c::{Mock, Transaction};

    const A: u8 = ADDRESS_ALT_LOW;

    #[test]
    fn probe_configure_and_a_burst_read_are_the_datasheet_register_transactions() {
        let mut bus = Mock::new(&[
            Transaction::write_read(A, vec![0x00], vec![0xE5]),
            Transaction::write(A, vec![0x2D, 0x00]),
            Transaction::write(A, vec![0x31, 0x09]),
            Transaction::write(A, vec![0x2C, 0x0D]),
            Transaction::write(A, vec![0x38, 0x80]),
            Transaction::write(A, vec![0x2D, 0x08]),
            // Bit 7 of FIFO_STATUS is the trigger flag, not an entry count.
            Transaction::write_read(A, vec![0x39], vec![0x85]),
            Transaction::write_read(A, vec![0x32], vec![0x10, 0x00, 0xF0, 0xFF, 0x00, 0x01]),
        ]);
        let mut adxl = Adxl345::probe(&mut bus, A).unwrap();
        adxl.configure(Rate::Hz800, Range::G4).unwrap();
        assert_eq!(adxl.fifo_len().unwrap(), 5);
        assert_eq!(
            adxl.read_sample().unwrap(),
            Sample {
                x: 16,
                y: -16,
                z: 256
            }
        );
        bus.done();
    }

    #[test]
    fn a_device_with_another_id_is_refused_naming_the_address_and_the_id() {
        let mut bus = Mock::new(&[Transaction::write_read(
            ADDRESS_ALT_HIGH,
            vec![0x00],
            vec![0x68],
        )]);
        let err = Adxl345::probe(&mut bus, ADDRESS_ALT_HIGH).unwrap_err();
        assert_eq!(
            err,
            Error::WrongDevice {
                address: 0x1D,
                found: 0x68
            }
        );
        assert_eq!(
            err.to_string(),
            "the device at I2C address 0x1d has id 0x68, not an ADXL345 (0xe5)"
        );
        bus.done();
    }

    #[test]
    fn a_missing_device_is_a_bus_error_that_says_nothing_answers() {
        let nack = ErrorKind::NoAcknowledge(NoAcknowledgeSource::Address);
        let mut bus =
            Mock::new(&[Transaction::write_read(A, vec![0x00], vec![0x00]).with_error(nack)]);
        let err = Adxl345::probe(&mut bus, A).unwrap_err();
        assert_eq!(err, Error::Bus(nack));
        assert!(err.to_string().contains("does not answer"), "{err}");
        bus.done();
    }

    #[test]
    fn a_failing_write_stops_the_configuration_at_that_register() {
        let mut bus = Mock::new(&[
            Transaction::write_read(A, vec![0x00], vec![0xE5]),
            Transaction::write(A, vec![0x2D, 0x00]),
            Transaction::write(A, vec![0x31, 0x08]).with_error(ErrorKind::Bus),
        ]);
        let mut adxl = Adxl345::probe(&mut bus, A).unwrap();
        let err = adxl.configure(Rate::Hz100, Range::G2).unwrap_err();
        assert_eq!(err, Error::Bus(ErrorKind::Bus));
        assert!(err
            .to_string()
            .starts_with("I2C transfer to the ADXL345 failed"));
        bus.done();
    }

    #[test]
    fn rates_and_ranges_map_to_their_register_codes() {
        let hz: Vec<u32> = Rate::ALL.iter().map(|r| r.hz()).collect();
        assert_eq!(hz, [25, 50, 100, 200, 400, 800, 1600, 3200]);
        for rate in Rate::ALL {
            assert_eq!(Rate::from_code(rate.code()), Some(rate));
            assert_eq!(Rate::from_hz(rate.hz()), Some(rate));
        }
        assert_eq!(Rate::Hz3200.code(), 0x0F);
        assert_eq!(Rate::from_hz(1000), None);
        assert_eq!(Range::from_g(16).map(Range::code), Some(3));
        assert_eq!(Range::from_g(3), None);
    }

    #[test]
    fn one_g_on_one_axis_is_about_256_lsb() {
        let sample = Sample { x: 0, y: 0, z: 256 };
        assert!((sample.magnitude_g() - 0.9984).abs() < 1e-4);
    }
}
