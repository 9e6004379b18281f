/* pcm-play SECONDS [PCM]: plays SECONDS of a 1 kHz square wave, 48 kHz S16_LE stereo, on an
 * ALSA playback device (default /dev/snd/pcmC0D0p) through the kernel's PCM ioctls (the
 * busybox guest has no aplay). In the real-Xen e2e it drives QEMU's usb-audio through
 * snd-usb-audio's isochronous OUT URBs, vhci_hcd, pvusb-frontend, the usbif ring,
 * pvusb-backend and real usbfs. Prints "frames=N xruns=N elapsed=S"; exit status 0 only if
 * every frame was taken. An underrun (EPIPE) re-prepares the stream and is counted. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>
#include <sound/asound.h>

#define RATE 48000
#define CHUNK 480 /* frames: 10 ms */

static struct snd_interval *iv(struct snd_pcm_hw_params *p, int k)
{
    return &p->intervals[k - SNDRV_PCM_HW_PARAM_FIRST_INTERVAL];
}

static void only(struct snd_mask *m, unsigned int v)
{
    memset(m, 0, sizeof(*m));
    m->bits[v >> 5] |= 1u << (v & 31);
}

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    int secs = argc > 1 ? atoi(argv[1]) : 3;
    const char *dev = argc > 2 ? argv[2] : "/dev/snd/pcmC0D0p";
    struct snd_pcm_hw_params p;
    short buf[CHUNK * 2];
    long total = (long)RATE * secs, written = 0;
    int fd, k, xruns = 0;
    double t0;

    alarm(secs * 10 + 20); /* never hang the guest agent */
    fd = open(dev, O_RDWR);
    if (fd < 0) { perror(dev); return 1; }
    memset(&p, 0, sizeof(p));
    for (k = 0; k <= SNDRV_PCM_HW_PARAM_LAST_MASK; k++)
        memset(&p.masks[k], 0xff, sizeof(p.masks[k]));
    for (k = SNDRV_PCM_HW_PARAM_FIRST_INTERVAL; k <= SNDRV_PCM_HW_PARAM_LAST_INTERVAL; k++) {
        iv(&p, k)->min = 0;
        iv(&p, k)->max = ~0u;
    }
    only(&p.masks[SNDRV_PCM_HW_PARAM_ACCESS], SNDRV_PCM_ACCESS_RW_INTERLEAVED);
    only(&p.masks[SNDRV_PCM_HW_PARAM_FORMAT], SNDRV_PCM_FORMAT_S16_LE);
    only(&p.masks[SNDRV_PCM_HW_PARAM_SUBFORMAT], SNDRV_PCM_SUBFORMAT_STD);
    iv(&p, SNDRV_PCM_HW_PARAM_CHANNELS)->min = iv(&p, SNDRV_PCM_HW_PARAM_CHANNELS)->max = 2;
    iv(&p, SNDRV_PCM_HW_PARAM_RATE)->min = iv(&p, SNDRV_PCM_HW_PARAM_RATE)->max = RATE;
    p.rmask = ~0u;
    if (ioctl(fd, SNDRV_PCM_IOCTL_HW_PARAMS, &p) < 0) { perror("HW_PARAMS"); return 1; }
    if (ioctl(fd, SNDRV_PCM_IOCTL_PREPARE) < 0) { perror("PREPARE"); return 1; }
    for (k = 0; k < CHUNK; k++)
        buf[2 * k] = buf[2 * k + 1] = (k / 24) % 2 ? 8000 : -8000;
    t0 = now();
    while (written < total) {
        struct snd_xferi x = { 0, buf, (snd_pcm_uframes_t)(total - written < CHUNK ? total - written : CHUNK) };
        if (ioctl(fd, SNDRV_PCM_IOCTL_WRITEI_FRAMES, &x) < 0) {
            if (errno == EPIPE) {
                xruns++;
                if (ioctl(fd, SNDRV_PCM_IOCTL_PREPARE) < 0) { perror("PREPARE after xrun"); return 1; }
                continue;
            }
            perror("WRITEI_FRAMES");
            printf("frames=%ld xruns=%d elapsed=%.2f\n", written, xruns, now() - t0);
            return 1;
        }
        written += x.result;
    }
    if (ioctl(fd, SNDRV_PCM_IOCTL_DRAIN) < 0 && errno != EPIPE) { perror("DRAIN"); return 1; }
    printf("frames=%ld xruns=%d elapsed=%.2f\n", written, xruns, now() - t0);
    return 0;
}
