using KvmSharp.Testing;

namespace KvmSharp.Tests;

/// <summary>
/// The public API of the KvmSharp package, checked against <c>PublicApi/KvmSharp.approved.txt</c>:
/// a change to it fails here until the approved file is updated with it (see <see cref="PublicApiApproval"/>).
/// </summary>
public class PublicApiTests
{
    [Test]
    public void PublicApi_IsTheApprovedOne()
    {
        PublicApiApproval.Verify(typeof(Kvm).Assembly);
    }
}
